"""The review widget: sample hypotheses, browse, pick, correct and export."""
