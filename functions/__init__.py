"""One thin module per deployable function; each builds its app from shared/ and nothing else."""
