//! The foundation: configuration errors, the fact, the lock.

use crate::support::*;

#[test]
fn unknown_config_key_is_an_error_naming_file_and_key_and_nothing_is_written() {
    let w = World::new("enabled: true\nbogus_key: 1\n");
    let out = w.run(&["apply"]);
    out.code(2)
        .stderr_has("bogus_key")
        .stderr_has(&w.config.display().to_string());
    assert!(
        !w.state_dir.exists(),
        "state dir was created despite a bad config"
    );
    assert!(!w.metrics.exists());
}
