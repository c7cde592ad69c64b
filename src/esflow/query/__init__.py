"""The query side: consistency tokens and waiting for read models (typed queries and the bus to come)."""
