// `rpc_groups(...)` takes types declared with `#[rpc_group]` + `#[rpc_group_impl]`.
use cruster::prelude::*;

#[derive(Clone)]
struct NotAGroup;

#[entity]
#[derive(Clone)]
struct User;

#[entity_impl(rpc_groups(NotAGroup))]
impl User {}

fn main() {}
