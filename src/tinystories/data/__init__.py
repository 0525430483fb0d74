"""Step 1, data: read sources, tokenize, write token files (`prepare`); TinyStories-Instruct records (`instruct`)."""
