"""The official rule table, where code written before checkpoint families finds it."""
from .families.official import (ENCODER_ONLY, ENCODER_ONLY_DROPPED, FINETUNED, PRETRAINED,  # noqa: F401
                                block_rules, embedding_rules, rules_for)
