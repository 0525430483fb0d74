"""`tinystories synth`: write TinyStories (and TinyStories-Instruct) with any OpenAI-compatible LLM, the paper's way.

vocab     the word list (verbs, nouns, adjectives) stories are asked to use
prompts   the editable prompt template (story and summary prompts, feature phrases)
draw      what story i asks for: a pure function of (seed, i)
gates     the checks a story passes before it counts
runner    the resumable run: concurrent calls, append-as-they-finish, budgets, progress
report    the kept/rejected table and the corpus's diversity report
"""
