"""TinyStories-Instruct (paper section 2.1): the record format, words and features, building records, the evaluation sets."""
