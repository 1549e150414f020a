"""The worker's tests; each folder holds the tests of the `worker` package it is named after."""
