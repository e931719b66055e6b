"""Choosing a backbone before training: ``hf-transfer rank`` scores every candidate from one cached frozen feature
pass (rank.py). It sits above training (it loads a run's data and fills the feature cache a feature run reads)."""
