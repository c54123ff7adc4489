"""SoftCoT reproduction: data, soft-thought models, evaluation and significance-tested tables."""

__version__ = "0.1.0"
