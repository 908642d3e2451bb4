"""The REST API: a Litestar application whose handlers parse, authorize, call one ledger
function (through core.ledger) and map its result or its error to HTTP."""
