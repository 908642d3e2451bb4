"""What the API, the job worker and the command line share: settings, the database (its URL,
the embedded PostgreSQL, the connection pool), the migration runner, logging, the error
table and the one way to call the ledger's SQL functions. It imports none of them."""
