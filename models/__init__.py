"""The two-tower retrieval model: features, towers, loss, training, evaluation, export."""
