"""``kdzoo tune``: hyper-parameter search with Optuna on the validation split."""
