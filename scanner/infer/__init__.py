"""Set-level membership: dataset inference (a p-value for "this model was trained on this set")."""
