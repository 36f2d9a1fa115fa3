//! Layered settings: command-line flags over `CAIRN_*` environment variables (both read by
//! clap) over a TOML file (`--config`) over the built-in defaults. The layers are merged with
//! figment; a key of the file that names no setting is an error that names it.

use clap::{ArgMatches, parser::ValueSource};
use eyre::eyre;
use figment::{
    Figment,
    providers::{Format as _, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;

/// Whether the value of `id` was given on the command line or in the environment.
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// `parsed` (what clap made of the flags, the environment and its defaults) with the settings
/// of the TOML file `file` in place of the defaults. Keys in the file are the flags' names
/// without the leading dashes (`rpc-addr = "127.0.0.1:8545"`).
pub fn layered<T: Serialize + DeserializeOwned>(
    parsed: T,
    matches: &ArgMatches,
    file: Option<&Path>,
) -> eyre::Result<T> {
    let Some(file) = file else {
        return Ok(parsed);
    };
    if !file.is_file() {
        return Err(eyre!("--config {}: no such file", file.display()));
    }
    let all = serde_json::to_value(&parsed)?;
    let given: serde_json::Map<String, serde_json::Value> = all
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| explicit(matches, &key.replace('-', "_")))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Figment::new()
        .merge(Serialized::defaults(all))
        .merge(Toml::file_exact(file))
        .merge(Serialized::defaults(given))
        .extract()
        .map_err(|err| eyre!("--config {}: {err}", file.display()))
}

/// The settings as TOML, the form `--config` reads.
pub fn to_toml<T: Serialize>(settings: &T) -> eyre::Result<String> {
    toml::to_string(settings).map_err(|err| eyre!("writing the settings as TOML: {err}"))
}

/// The default datadir of chain `name`: `cairn/NAME` in the platform's data directory
/// (`~/.local/share` on Linux, `~/Library/Application Support` on macOS), else `.cairn/NAME`.
pub fn default_datadir(name: &str) -> std::path::PathBuf {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dirs::data_dir().map_or_else(
        || Path::new(".cairn").join(&name),
        |data| data.join("cairn").join(&name),
    )
}
