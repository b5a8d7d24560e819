//! Hostile names and planted links: every one is rejected with an error that names it.

use maos_coordination::core::{ChannelName, Error, ResourceName, Workspace, fsx};
use maos_coordination::{AgentId, AgentRegistry};

#[test]
fn hostile_names_are_rejected_and_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let long = "x".repeat(300);
    // (input, shown): `shown` is how the error must spell the input.
    let table: Vec<(&str, String)> = vec![
        ("../etc/passwd", "../etc/passwd".into()),
        ("/etc/x", "/etc/x".into()),
        ("a/../../b", "a/../../b".into()),
        ("a//b", "a//b".into()),
        ("a\0b", "a\\0b".into()),
        (long.as_str(), long.clone()),
    ];
    for (input, shown) in &table {
        let errors = [
            (
                "resource",
                ResourceName::in_workspace(ws.root(), input).err(),
            ),
            ("channel", ChannelName::new(*input).err()),
            ("agent", AgentId::new(*input).err()),
        ];
        for (kind, err) in errors {
            let err = err.unwrap_or_else(|| panic!("{kind} name {input:?} was accepted"));
            let msg = err.to_string();
            assert!(
                msg.contains(shown.as_str()),
                "{kind} error {msg:?} does not name {input:?}"
            );
        }
    }
}

#[test]
fn a_symlink_planted_inside_maos_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.json"), "{}").unwrap();
    let ws = Workspace::init(dir.path()).unwrap();

    // A link in place of a channel directory.
    std::os::unix::fs::symlink(outside.path(), ws.channels_dir().join("evil")).unwrap();
    let err = ws
        .channel_dir(&ChannelName::new("evil").unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("evil"), "{err}");

    // A link in place of an agent record.
    let link = ws.agents_dir().join("mallory.json");
    std::os::unix::fs::symlink(outside.path().join("secret.json"), &link).unwrap();
    let err = AgentRegistry::new(&ws)
        .get(&AgentId::new("mallory").unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains("mallory.json"), "{err}");
    let err = fsx::read_bounded(&link, 1024).unwrap_err();
    assert!(err.to_string().contains("mallory.json"), "{err}");

    // The whole .maos directory replaced by a link.
    let dir2 = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir2.path().join(".maos")).unwrap();
    let err = Workspace::open(dir2.path()).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert!(err.to_string().contains(".maos"), "{err}");
}

#[test]
fn oversized_records_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let path = ws.agents_dir().join("huge.json");
    std::fs::write(&path, vec![b' '; 1 << 20]).unwrap();
    let err = AgentRegistry::new(&ws)
        .get(&AgentId::new("huge").unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("huge.json"), "{err}");
}
