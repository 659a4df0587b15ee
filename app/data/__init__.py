"""Prompt data: public dataset formats, streaming datasets, the prompt template."""
