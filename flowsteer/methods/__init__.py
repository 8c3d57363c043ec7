"""Methods: each is an objective (its loss and sampling policy) plus a config, run by the shared Trainer."""
