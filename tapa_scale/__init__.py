"""tapa_scale: distributed pretraining of long-context language models with Token-Aware Phase Attention."""
__version__ = "0.1.0"
