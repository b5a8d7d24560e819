//! docs/cli.md is checked against the code it documents: every subcommand and every long
//! option of the clap definition ([`maos_cli::command`]) is documented in its command's
//! section, and the exit-code table is [`maos_cli::EXIT_CODES`], as `maos --help` prints it.
//! (The workspace-wide rules live in the tidy module of the tests package.)

use std::path::Path;

fn cli_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of each `### \`maos ...\`` section, with the command paths its heading names:
/// `maos lock acquire RESOURCE ...` names `lock acquire`, `maos channels [list]` names
/// `channels` and `channels list`, `maos task start|review ID` names both commands.
fn sections(md: &str) -> Vec<(Vec<String>, String)> {
    let is_word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    let mut out: Vec<(Vec<String>, String)> = Vec::new();
    for line in md.lines() {
        if let Some(heading) = line.strip_prefix("### `maos ") {
            // `### \`maos a b\` / \`maos a c FILE\``: one section for several commands.
            let mut all = Vec::new();
            for rest in heading.split("` / `maos ") {
                let mut paths = vec![String::new()];
                for word in rest.split([' ', '`']) {
                    let join = |p: &String, w: &str| {
                        if p.is_empty() {
                            w.to_string()
                        } else {
                            format!("{p} {w}")
                        }
                    };
                    if is_word(word) {
                        paths = paths.iter().map(|p| join(p, word)).collect();
                    } else if let Some(opt) = word
                        .strip_prefix('[')
                        .and_then(|w| w.strip_suffix(']'))
                        .filter(|w| is_word(w))
                    {
                        let longer: Vec<String> = paths.iter().map(|p| join(p, opt)).collect();
                        paths.extend(longer);
                    } else if word.contains('|') && word.split('|').all(is_word) {
                        paths = paths
                            .iter()
                            .flat_map(|p| word.split('|').map(move |w| join(p, w)))
                            .collect();
                    } else {
                        break;
                    }
                }
                all.extend(paths);
            }
            out.push((all, format!("{line}\n")));
        } else if line.starts_with("## ") || line.starts_with("### ") {
            out.push((Vec::new(), String::new()));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// Every visible subcommand of `cmd`, with its path from the root (`["lock", "acquire"]`).
fn walk(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        path.push(sub.get_name().to_string());
        out.push((path.clone(), sub.clone()));
        walk(sub, path, out);
        path.pop();
    }
}

fn long_flags(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .filter(|l| l != "--help" && l != "--version")
        .collect()
}

#[test]
fn every_subcommand_and_option_is_documented_in_its_section() {
    let md = cli_md();
    let secs = sections(&md);
    let root = maos_cli::command();
    let mut missing = Vec::new();
    // Global options: the "Global options" table.
    let global = md
        .split("## Global options")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/cli.md has a Global options section");
    for flag in root
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .filter_map(|a| a.get_long())
    {
        if !global.contains(&format!("`--{flag}")) {
            missing.push(format!("global option --{flag}"));
        }
    }
    let mut checked = 0;
    let mut cmds = Vec::new();
    walk(&root, &mut Vec::new(), &mut cmds);
    for (path, cmd) in &cmds {
        let name = path.join(" ");
        // A command documented in its own section, or (a group) in its children's sections.
        let text: String = secs
            .iter()
            .filter(|(paths, _)| {
                paths
                    .iter()
                    .any(|p| p == &name || p.starts_with(&format!("{name} ")))
            })
            .map(|(_, t)| t.as_str())
            .collect();
        if text.is_empty() {
            missing.push(format!("section `maos {name}`"));
            continue;
        }
        for flag in long_flags(cmd) {
            checked += 1;
            if !text.contains(&flag) {
                missing.push(format!("`maos {name}` option {flag}"));
            }
        }
    }
    assert!(
        cmds.len() > 40 && checked > 60,
        "the walk found only {} commands and {checked} options",
        cmds.len()
    );
    assert!(
        missing.is_empty(),
        "docs/cli.md does not document:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_exit_code_table_is_the_one_in_the_code() {
    let md = cli_md();
    let table = md
        .split("## Exit codes")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/cli.md has an Exit codes section");
    let rows: Vec<(u8, String)> = table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.to_string()))
        })
        .collect();
    let code: Vec<(u8, String)> = maos_cli::EXIT_CODES
        .iter()
        .map(|(c, _, meaning)| (*c as u8, meaning.to_string()))
        .collect();
    assert_eq!(rows, code, "docs/cli.md's exit codes differ from exit.rs");

    let help = maos_cli::command()
        .get_after_help()
        .expect("maos --help ends with the exit codes")
        .to_string();
    for (c, short, _) in maos_cli::EXIT_CODES {
        assert!(help.contains(&format!("{} {short}", c as u8)), "{help}");
    }
}

/// The exit codes restated in prose (README.md, ARCHITECTURE.md) agree with the table in the
/// code: every code named, each with a word of its meaning.
#[test]
fn the_exit_codes_in_prose_match_the_table() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (file, opener) in [
        ("README.md", "exit codes are "),
        (
            "ARCHITECTURE.md",
            "exit codes mean the same in every command: ",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(file))
            .expect("the document")
            .replace('\n', " ");
        let start = text
            .find(opener)
            .unwrap_or_else(|| panic!("{file} names the exit codes after {opener:?}"))
            + opener.len();
        let list = text[start..]
            .split([':', '.'])
            .next()
            .expect("a list of codes");
        let mut seen = Vec::new();
        for item in list.split(',') {
            let mut words = item.split_whitespace();
            let code: u8 = words
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("{file}: {item:?} starts with no code"));
            let word = words.next().unwrap_or_default();
            let word = word.split('/').next().unwrap_or_default();
            let (_, short, meaning) = maos_cli::EXIT_CODES
                .iter()
                .find(|(c, _, _)| *c as u8 == code)
                .unwrap_or_else(|| panic!("{file}: exit code {code} is not in the table"));
            let known = format!("{short} {meaning} ok").to_lowercase();
            assert!(
                known.contains(&word.to_lowercase()),
                "{file}: exit code {code} called {word:?}, the table says {meaning:?}"
            );
            seen.push(code);
        }
        let all: Vec<u8> = maos_cli::EXIT_CODES
            .iter()
            .map(|(c, _, _)| *c as u8)
            .collect();
        assert_eq!(seen, all, "{file} names every exit code, in order");
    }
}
