"""Evaluation: each capability's scoring of a run (images, clips, text, pairs, upscaling, tables, a latent space),
the feature extractor they share, the reports, the bake-off's page and human rating. Each evaluator returns a
`report.Scored` (its figures, its report rows and its samples); `genlab.evaluate` joins a model's parts into one
metrics.json and one report.html."""
