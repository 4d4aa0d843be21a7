"""Evaluation: sliding-window perplexity by context length, passkey and RULER-style retrieval, checkpoint loading."""
from .long_context import evaluate_lengths, format_table, plot_ppl, tokenize_texts
from .perplexity import perplexity, sliding_window_nll, window_spans

__all__ = ["evaluate_lengths", "format_table", "plot_ppl", "tokenize_texts", "perplexity",
           "sliding_window_nll", "window_spans"]
