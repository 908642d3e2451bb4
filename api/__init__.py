"""The wallet service's Python side: settings, database plumbing, CLI and (later) the REST API."""
