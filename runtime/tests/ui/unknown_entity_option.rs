// Misspelt or unknown `#[entity(...)]` options are errors, each at its own span.
use cruster::prelude::*;

#[entity(name = "counter", mailbox_size = 10, concurrency = 2, idle_secs = 5)]
#[derive(Clone)]
struct Counter;

fn main() {}
