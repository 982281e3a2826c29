//! Integration tests of buildmaster against the real services. Each test
//! builds its own installation (see `harness`), so they run in parallel.

mod accounts;
mod api;
mod api_scale;
mod auth;
mod bad_input;
mod browser;
mod checkconfig;
mod console;
mod failures;
mod faults;
mod github;
mod github_api;
mod hardening;
mod harness;
mod identity_providers;
mod irc;
mod live;
mod operations;
mod pages;
mod pipeline;
mod python_org;
mod queue;
mod reload;
mod reporters;
mod results;
mod schedulers;
mod servers;
mod sign_in;
mod sources;
mod telemetry;
mod wire;
