"""The tools that choose and compare models: `advice` (which families suit the data), `plan` (what a config costs),
`bakeoff` (families side by side on the same data and budget), `sweep` (hyperparameters on Optuna) and `compare`
(runs side by side). Each trains and scores through the API, so what it makes is an ordinary run."""
