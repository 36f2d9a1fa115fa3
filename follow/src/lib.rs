//! The follower's actors (upstream client, driver, resolver, executor) and their wiring around
//! commonware's marshal. It builds on `cairn-feed`; the actors land with `cairn follow`.
