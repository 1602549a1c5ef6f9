//! A small flag parser shared by the subcommands: `--name value` and `--name=value`, no
//! positional arguments. Every failure is a [`UsageError`] whose message says what was expected;
//! the caller prints it and exits with [`USAGE_EXIT`].

use std::fmt;
use std::str::FromStr;

/// The exit code of every command-line usage error (unknown flag, bad value).
pub const USAGE_EXIT: i32 = 2;

/// A command-line mistake, with a message meant for the user.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Walks the arguments of one subcommand, flag by flag.
pub struct Flags<'a> {
    args: &'a [String],
    pos: usize,
}

/// One flag as written on the command line: its name (with the dashes) and the value given
/// after `=`, if any.
pub struct Flag {
    /// The flag's name, e.g. `--epochs`.
    pub name: String,
    inline: Option<String>,
}

impl<'a> Flags<'a> {
    /// A parser over `args` (the arguments after the subcommand's name).
    pub fn new(args: &'a [String]) -> Self {
        Self { args, pos: 0 }
    }

    /// The next flag, or `None` at the end. Anything that does not start with `--` (or `-h`)
    /// is an error: no command takes positional arguments.
    pub fn next_flag(&mut self) -> Result<Option<Flag>, UsageError> {
        let Some(arg) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        if arg == "-h" {
            return Ok(Some(Flag {
                name: "--help".into(),
                inline: None,
            }));
        }
        if !arg.starts_with("--") || arg.len() == 2 {
            return Err(UsageError(format!(
                "unexpected argument '{arg}'; expected a flag such as --help"
            )));
        }
        Ok(Some(match arg.split_once('=') {
            Some((name, value)) => Flag {
                name: name.into(),
                inline: Some(value.into()),
            },
            None => Flag {
                name: arg.clone(),
                inline: None,
            },
        }))
    }

    /// The value of `flag`: the text after `=`, or else the next argument.
    pub fn value(&mut self, flag: &Flag) -> Result<String, UsageError> {
        if let Some(v) = &flag.inline {
            return Ok(v.clone());
        }
        let v = self.args.get(self.pos).ok_or_else(|| {
            UsageError(format!("{} expects a value, but none was given", flag.name))
        })?;
        self.pos += 1;
        Ok(v.clone())
    }

    /// Fails when a flag that takes no value was written as `--flag=value`.
    pub fn no_value(&self, flag: &Flag) -> Result<(), UsageError> {
        match &flag.inline {
            Some(v) => Err(UsageError(format!(
                "{} takes no value, but was given '{v}'",
                flag.name
            ))),
            None => Ok(()),
        }
    }

    /// The value of `flag` parsed as a `T`; `expected` describes a valid value for the message.
    pub fn parsed<T: FromStr>(&mut self, flag: &Flag, expected: &str) -> Result<T, UsageError> {
        let text = self.value(flag)?;
        text.trim().parse().map_err(|_| {
            UsageError(format!(
                "{} expects {expected}, but was given '{text}'",
                flag.name
            ))
        })
    }
}

/// The error for a flag the command does not know.
pub fn unknown(flag: &Flag, command: &str) -> UsageError {
    UsageError(format!(
        "unknown flag {} for `fusedrop {command}`",
        flag.name
    ))
}

/// Checks that `value` (from `flag`) lies in `[min, max]`.
pub fn in_range<T: PartialOrd + fmt::Display>(
    flag: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, UsageError> {
    if value < min || value > max {
        return Err(UsageError(format!(
            "{flag} = {value} is out of range; expected a value from {min} to {max}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_come_after_a_space_or_an_equals_sign() {
        let args = strings(&["--epochs", "5", "--p=0.25", "-h"]);
        let mut flags = Flags::new(&args);
        let epochs = flags.next_flag().unwrap().unwrap();
        assert_eq!(flags.parsed::<usize>(&epochs, "n").unwrap(), 5);
        let p = flags.next_flag().unwrap().unwrap();
        assert_eq!(p.name, "--p");
        assert_eq!(flags.parsed::<f32>(&p, "p").unwrap(), 0.25);
        assert_eq!(flags.next_flag().unwrap().unwrap().name, "--help");
        assert!(flags.next_flag().unwrap().is_none());
    }

    #[test]
    fn mistakes_are_errors_with_the_flag_and_the_value() {
        let args = strings(&["--epochs", "ten"]);
        let mut flags = Flags::new(&args);
        let flag = flags.next_flag().unwrap().unwrap();
        let e = flags.parsed::<usize>(&flag, "a number").unwrap_err();
        assert!(e.0.contains("--epochs") && e.0.contains("'ten'"), "{e}");

        let args = strings(&["--epochs"]);
        let mut flags = Flags::new(&args);
        let flag = flags.next_flag().unwrap().unwrap();
        assert!(flags
            .value(&flag)
            .unwrap_err()
            .0
            .contains("expects a value"));

        let args = strings(&["positional"]);
        assert!(Flags::new(&args).next_flag().is_err());
        assert!(in_range("--hidden", 0usize, 1, 10).is_err());
        assert_eq!(in_range("--hidden", 3usize, 1, 10).unwrap(), 3);
    }
}
