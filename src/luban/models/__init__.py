"""nn.Modules only, no task logic. Text models take (ids, mask) and return logits."""
