"""Evaluation, the way the paper does it (sections 3, 4.2 and 4.4), one job per module:

  loss.py         nats/token, perplexity, bits per byte on any text source or DATA_DIR
  gpt_eval.py     GPT-Eval: completions graded by any OpenAI-compatible LLM judge
  judge.py        the judge: template file, conversation, grade parsing, cached concurrent grading
  cache.py        the append-only on-disk cache that lets an interrupted evaluation resume
  diversity.py    section 4.4.1: Rouge against the original ending, between completions, against the corpus
  ngram_index.py  the streamed n-gram index behind the corpus comparisons (scales to 2.1M stories)
  rouge.py        Rouge-N, written out
  probes.py       factual / reasoning / context-tracking probes, scored pass / partial / fail
  instruct.py     instruction following (TinyStories-Instruct): words, sentence, features, judge grades
  compare.py      saved reports of several runs side by side
  common.py       model fingerprint, report paths, bootstrap intervals

Reports go to MODEL_DIR/eval/<kind>.json and .md (or --out DIR), which is where `compare` looks.
"""
