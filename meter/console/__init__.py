"""The operator's console at /console: server-rendered pages over the admin service functions,
behind a sign-in with the admin token. Every change it makes is audited as `console`."""
