"""Domain-adaptation losses for finetune, one method per file."""
