"""chessvlm: teach vision-language models to read chess boards into exact positions."""

__version__ = "0.1.0"
