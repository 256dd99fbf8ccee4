//! Compile errors of the workflow macros: each case in `tests/ui_workflow/` with its
//! expected message. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p cruster --test workflow_macro_ui` and read them before
//! committing.

#[test]
fn workflow_macro_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui_workflow/*.rs");
}
