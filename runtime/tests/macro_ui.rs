//! Compile errors of the entity macros: each case in `tests/ui/` with its expected message.
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p cruster --test macro_ui`
//! and read them before committing.

#[test]
fn entity_macro_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
