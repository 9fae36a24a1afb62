"""The shipped recipes: one ready-to-run config per family and data set (`configs/` in a checkout links here), and
what `genlab advise` starts its proposals from."""
