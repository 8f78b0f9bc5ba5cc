"""One module per strategy of ../shared/SURVEY.md; each registers itself in STRATEGIES."""
