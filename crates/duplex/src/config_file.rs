//! The configuration file of `duplex serve` (`--config FILE` or `DUPLEX_CONFIG`), layered
//! under the environment and the command line: flag > `DUPLEX_*` env > file > default.
//!
//! How: each key of the file becomes the default value of its `serve` argument before clap
//! parses the command line, so clap applies its own precedence (a flag, then the env
//! variable, then the default) and a file value goes through the same value parser as
//! the flag (`1MiB`, `30s`, `memory`). Every key is checked before that, against the
//! arguments and through the argument's own parser, so a mistake is reported with the key,
//! the file and the line. [`render`] prints the effective configuration back as TOML with
//! each value's source. The file is read once, at start.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The subcommand whose arguments the file sets.
const SERVE: &str = "serve";

/// Arguments of `serve` that are about the configuration itself, never keys of it.
const NOT_KEYS: &[&str] = &["config_file", "print_config", "help", "version"];

/// Global arguments of the `duplex` command that the file may set too.
const GLOBAL_KEYS: &[&str] = &["log_format"];

/// A loaded configuration file: where it is and which keys it set.
#[derive(Debug)]
pub(crate) struct ConfigFile {
    /// The file as given (`--config` or `DUPLEX_CONFIG`).
    path: PathBuf,
    /// Argument id → the line (from 1) of its key, to say where each value came from.
    lines: BTreeMap<String, usize>,
}

/// `command` with the values of `duplex serve`'s config file (named by `--config` or
/// `DUPLEX_CONFIG` in `args` or the environment) as its defaults, and the file. Without a
/// file, `command` unchanged. An unreadable file, an unknown key or a bad value is an error
/// naming the file, the key and its line.
pub(crate) fn layer(
    command: Command,
    args: &[OsString],
) -> anyhow::Result<(Command, Option<ConfigFile>)> {
    // A first pass only to find the file: any other mistake on the command line is reported
    // by the real parse, with clap's usual message.
    let Some(path) = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()
        .and_then(|matches| {
            let serve = matches.subcommand_matches(SERVE)?;
            serve.try_get_one::<PathBuf>("config_file").ok()?.cloned()
        })
    else {
        return Ok((command, None));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let settings = read_settings(&command, &path, &text)?;
    let lines = settings
        .iter()
        .map(|setting| (setting.id.clone(), setting.line))
        .collect();
    let (global, own): (Vec<Setting>, Vec<Setting>) =
        settings.into_iter().partition(|setting| setting.global);
    // `mut_args` keeps the arguments in place (`mut_arg` moves one to the end, which would
    // reorder --help).
    let command = command
        .mut_args(with_defaults(global))
        .mut_subcommand(SERVE, |serve| serve.mut_args(with_defaults(own)));
    Ok((command, Some(ConfigFile { path, lines })))
}

/// Sets each argument named in `settings` to default to its values.
fn with_defaults(settings: Vec<Setting>) -> impl FnMut(Arg) -> Arg {
    let mut values: BTreeMap<String, Vec<String>> = settings
        .into_iter()
        .map(|setting| (setting.id, setting.values))
        .collect();
    move |arg| match values.remove(arg.get_id().as_str()) {
        Some(values) => arg.default_values(values),
        None => arg,
    }
}

/// One checked key of the file.
struct Setting {
    /// The argument it sets.
    id: String,
    /// Whether that is a global argument of `duplex` rather than one of `serve`.
    global: bool,
    /// Its values as command-line text (several for a list).
    values: Vec<String>,
    /// Its line in the file.
    line: usize,
}

/// Every key of `text` checked against `command`'s arguments and parsers.
fn read_settings(command: &Command, path: &Path, text: &str) -> anyhow::Result<Vec<Setting>> {
    let file = path.display();
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> = toml::from_str(text)
        .map_err(|error| {
        anyhow!(
            "config file {file}: not valid TOML: {}",
            error.to_string().trim_end()
        )
    })?;
    let serve = command
        .find_subcommand(SERVE)
        .ok_or_else(|| anyhow!("the command has no `{SERVE}` subcommand"))?;
    let mut settings = Vec::with_capacity(table.len());
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let key = key.into_inner();
        let long = key.replace('_', "-");
        let (arg, global) = match find_key(serve, &long) {
            Some(arg) => (arg, false),
            None => match find_global(command, &long) {
                Some(arg) => (arg, true),
                None => bail!(
                    "config file {file} line {line}: unknown key `{key}`{}; keys are the \
                     flags of `duplex serve` without the leading -- (see --help)",
                    suggestion(serve, &long)
                        .map(|near| format!(" (did you mean `{near}`?)"))
                        .unwrap_or_default()
                ),
            },
        };
        let values = values_of(arg, value.get_ref()).map_err(|expected| {
            anyhow!("config file {file} line {line}: bad value for `{key}`: {expected}")
        })?;
        check_values(arg, &values).map_err(|reason| {
            anyhow!(
                "config file {file} line {line}: bad value for `{key}`: {reason}{}",
                default_hint(arg)
            )
        })?;
        settings.push(Setting {
            id: arg.get_id().to_string(),
            global,
            values,
            line,
        });
    }
    Ok(settings)
}

/// The `serve` argument whose flag is `--long`, if it is one a file may set.
fn find_key<'a>(serve: &'a Command, long: &str) -> Option<&'a Arg> {
    serve
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long) && !NOT_KEYS.contains(&arg.get_id().as_str()))
}

/// The global `duplex` argument whose flag is `--long`, if a file may set it.
fn find_global<'a>(command: &'a Command, long: &str) -> Option<&'a Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long) && GLOBAL_KEYS.contains(&arg.get_id().as_str()))
}

/// The key closest to a misspelt one, when one is close.
fn suggestion(serve: &Command, long: &str) -> Option<String> {
    serve
        .get_arguments()
        .filter(|arg| !NOT_KEYS.contains(&arg.get_id().as_str()))
        .filter_map(Arg::get_long)
        .map(|known| (edit_distance(known, long), known))
        .filter(|&(distance, known)| distance <= 2.max(known.len() / 4))
        .min()
        .map(|(_, known)| known.to_owned())
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Whether `arg` takes a list (`--anonymous-read a,b`).
fn takes_list(arg: &Arg) -> bool {
    arg.get_value_delimiter().is_some() || matches!(arg.get_action(), ArgAction::Append)
}

/// A TOML value as the command-line text of `arg`: strings as they are, integers and
/// booleans written out, arrays (or comma-separated strings) for list arguments.
fn values_of(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        other => Err(format!(
            "expected a string, a number or true/false, found a {}",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) if takes_list(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected one value, found a list".into()),
        toml::Value::String(text) if takes_list(arg) => Ok(match arg.get_value_delimiter() {
            Some(delimiter) => text.split(delimiter).map(str::to_owned).collect(),
            None => vec![text.clone()],
        }),
        toml::Value::Table(_) => Err(
            "expected a value, found a table: the file has no sections, only `key = value` lines"
                .into(),
        ),
        scalar_value => scalar(scalar_value).map(|text| vec![text]),
    }
}

/// Runs `values` through `arg`'s own value parser; the parser's complaint if one fails.
fn check_values(arg: &Arg, values: &[String]) -> Result<(), String> {
    // A one-argument command with the same parser: the real parse would say the same,
    // but without the file and line.
    let probe = Command::new("config-file").no_binary_name(true).arg(
        Arg::new("value")
            .long("value")
            .action(ArgAction::Append)
            .allow_hyphen_values(true)
            .value_parser(arg.get_value_parser().clone()),
    );
    let args = values.iter().map(|value| format!("--value={value}"));
    match probe.try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(error) => Err(reason(&error)),
    }
}

/// What a value parser said, without clap's framing (which names the probe).
fn reason(error: &clap::Error) -> String {
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => format!("`{value}`: "),
        _ => String::new(),
    };
    if let Some(source) = std::error::Error::source(error) {
        return format!("{value}{source}");
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("{value}expected one of {}", valid.join(", "));
    }
    format!("{value}{}", error.kind())
}

/// ` (default: X)` for an argument with a default, to show the expected form.
fn default_hint(arg: &Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    if defaults.is_empty() {
        String::new()
    } else {
        format!(" (default: {})", defaults.join(","))
    }
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// The effective configuration of `duplex serve` as TOML that `--config` loads again: one
/// `key = value` line per setting, grouped by the sections of `--help`, each with a
/// trailing comment saying where it came from (flag, env, file, default). Settings with no
/// value are listed commented out. Values are as given (a path, never a file's contents).
pub(crate) fn render(command: &Command, matches: &ArgMatches, file: Option<&ConfigFile>) -> String {
    let mut out = String::new();
    out.push_str(
        "# duplex serve: effective configuration (flag > DUPLEX_* env > config file > default).\n",
    );
    match file {
        Some(file) => {
            let _ = writeln!(out, "# config file: {}", file.path.display());
        }
        None => out.push_str("# config file: none\n"),
    }
    let Some(serve_command) = command.find_subcommand(SERVE) else {
        return out;
    };
    let serve_matches = matches.subcommand_matches(SERVE).unwrap_or(matches);
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let globals = command
        .get_arguments()
        .filter(|arg| GLOBAL_KEYS.contains(&arg.get_id().as_str()))
        .map(|arg| (arg, matches));
    let own = serve_command
        .get_arguments()
        .filter(|arg| !NOT_KEYS.contains(&arg.get_id().as_str()) && !arg.is_global_set())
        .map(|arg| (arg, serve_matches));
    for (arg, matches) in own.chain(globals) {
        let Some(long) = arg.get_long() else { continue };
        let heading = arg.get_help_heading().unwrap_or("Other").to_owned();
        let line = setting_line(arg, long, matches, file);
        match sections.iter_mut().find(|(name, _)| *name == heading) {
            Some((_, lines)) => lines.push(line),
            None => sections.push((heading, vec![line])),
        }
    }
    for (heading, lines) in sections {
        let _ = writeln!(out, "\n# {heading}");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One setting of [`render`]: `key = value  # source`.
fn setting_line(arg: &Arg, long: &str, matches: &ArgMatches, file: Option<&ConfigFile>) -> String {
    let id = arg.get_id().as_str();
    let source = match matches.value_source(id) {
        Some(ValueSource::CommandLine) => "flag".to_owned(),
        Some(ValueSource::EnvVariable) => match arg.get_env() {
            Some(name) => format!("env {}", name.to_string_lossy()),
            None => "env".to_owned(),
        },
        _ => match file.and_then(|file| file.lines.get(id)) {
            Some(line) => format!("file, line {line}"),
            None => "default".to_owned(),
        },
    };
    let raw: Vec<String> = matches
        .get_raw(id)
        .map(|values| {
            values
                .map(|value| value.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if takes_list(arg) {
        let items: Vec<String> = raw.iter().map(|value| toml_string(value)).collect();
        return format!("{long} = [{}]  # {source}", items.join(", "));
    }
    match raw.first() {
        Some(value) => format!("{long} = {}  # {source}", toml_scalar(value)),
        None => format!("# {long} =   # not set"),
    }
}

/// A value as TOML: `true`/`false` and whole numbers bare (a file gives them back as the
/// same text), anything else a string.
fn toml_scalar(value: &str) -> String {
    if value == "true" || value == "false" || value.parse::<i64>().is_ok() {
        value.to_owned()
    } else {
        toml_string(value)
    }
}

/// A TOML string literal, escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a = 1\nb = 2\n", 0), 1);
        assert_eq!(line_of("a = 1\nb = 2\n", 6), 2);
    }

    #[test]
    fn near_names_are_suggested() {
        assert_eq!(edit_distance("max-connections", "max-conections"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn strings_are_quoted_and_numbers_bare() {
        assert_eq!(toml_scalar("20000"), "20000");
        assert_eq!(toml_scalar("true"), "true");
        assert_eq!(toml_scalar("1MiB"), "\"1MiB\"");
        let quoted = toml_string("a\"b\\c");
        let parsed: toml::Table = toml::from_str(&format!("key = {quoted}")).unwrap();
        assert_eq!(parsed["key"].as_str(), Some("a\"b\\c"));
    }
}
