//! The BACKUP and RESTORE statements a VDI client sends to SQL Server, read far enough to run
//! the engine in their place: what the `vdi-sqlcmd` stand-in for `sqlcmd` uses.
//!
//! A client built for SQL Server issues its statement through `sqlcmd` (or `osql`), for example
//! `BACKUP DATABASE db TO VIRTUAL_DEVICE='a', VIRTUAL_DEVICE='b' WITH FORMAT,
//! MAXTRANSFERSIZE=1048576`. [`Statement::parse`] takes the operation, every
//! `VIRTUAL_DEVICE='...'` in order (the first is the set's name, as VDI requires), and the
//! `WITH` options the engine models (`MAXTRANSFERSIZE`, `BLOCKSIZE`, `BUFFERCOUNT`); it ignores
//! the rest (`FORMAT`, `REPLACE`, `COPY_ONLY`, ...). [`Statement::engine_args`] turns it into a
//! `vdi-engine` command line.
//!
//! ```
//! use vdi_engine::statement::{Statement, Verb};
//!
//! let s = Statement::parse(
//!     "BACKUP DATABASE pubs TO VIRTUAL_DEVICE='{G}', VIRTUAL_DEVICE='{G}1' WITH MAXTRANSFERSIZE=1048576",
//! )?;
//! assert_eq!(s.verb, Verb::Backup);
//! assert_eq!(s.devices, ["{G}", "{G}1"]);
//! assert_eq!(s.max_transfer_size, Some(1_048_576));
//! # Ok::<(), vdi_engine::statement::StatementError>(())
//! ```

use core::fmt;

/// BACKUP or RESTORE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `BACKUP DATABASE|LOG … TO …`.
    Backup,
    /// `RESTORE DATABASE|LOG … FROM …`.
    Restore,
}

/// A statement, as far as the engine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement {
    /// The operation.
    pub verb: Verb,
    /// The database (or log) named.
    pub database: String,
    /// Every `VIRTUAL_DEVICE='...'`, in order.
    pub devices: Vec<String>,
    /// `MAXTRANSFERSIZE`, if given.
    pub max_transfer_size: Option<u32>,
    /// `BLOCKSIZE`, if given.
    pub block_size: Option<u32>,
    /// `BUFFERCOUNT`, if given.
    pub buffer_count: Option<u32>,
}

/// Why a statement could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementError {
    /// It is neither a BACKUP nor a RESTORE.
    NotBackupOrRestore,
    /// It names no virtual device.
    NoVirtualDevice,
    /// A quoted name is not closed.
    UnclosedQuote,
    /// An option's value is not a number.
    BadNumber(String),
}

impl fmt::Display for StatementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotBackupOrRestore => f.write_str("not a BACKUP or RESTORE statement"),
            Self::NoVirtualDevice => f.write_str("the statement names no VIRTUAL_DEVICE"),
            Self::UnclosedQuote => f.write_str("a quoted name is not closed"),
            Self::BadNumber(option) => write!(f, "the value of {option} is not a number"),
        }
    }
}

impl std::error::Error for StatementError {}

impl Statement {
    /// Reads a statement (keywords in any case; `''` inside a quoted name stands for `'`).
    ///
    /// # Errors
    ///
    /// A [`StatementError`] naming what is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, StatementError> {
        let tokens = tokenize(text)?;
        let word = |i: usize| match tokens.get(i) {
            Some(Token::Word(w)) => w.to_ascii_uppercase(),
            _ => String::new(),
        };
        let verb = match word(0).as_str() {
            "BACKUP" => Verb::Backup,
            "RESTORE" => Verb::Restore,
            _ => return Err(StatementError::NotBackupOrRestore),
        };
        let database = match tokens.get(2) {
            Some(Token::Word(w)) => w.trim_matches(['[', ']']).to_owned(),
            _ => String::new(),
        };
        let mut s = Self {
            verb,
            database,
            devices: Vec::new(),
            max_transfer_size: None,
            block_size: None,
            buffer_count: None,
        };
        let mut i = 0;
        while i < tokens.len() {
            if let Token::Word(w) = &tokens[i] {
                let key = w.to_ascii_uppercase();
                let value = match (tokens.get(i + 1), tokens.get(i + 2)) {
                    (Some(Token::Equals), Some(v)) => Some(v),
                    _ => None,
                };
                match (key.as_str(), value) {
                    ("VIRTUAL_DEVICE", Some(Token::Quoted(name))) => s.devices.push(name.clone()),
                    ("MAXTRANSFERSIZE", Some(v)) => s.max_transfer_size = Some(number(&key, v)?),
                    ("BLOCKSIZE", Some(v)) => s.block_size = Some(number(&key, v)?),
                    ("BUFFERCOUNT", Some(v)) => s.buffer_count = Some(number(&key, v)?),
                    _ => {}
                }
            }
            i += 1;
        }
        if s.devices.is_empty() {
            return Err(StatementError::NoVirtualDevice);
        }
        Ok(s)
    }

    /// The `vdi-engine` command line that does what the statement asks: the subcommand, the
    /// set (the first device), every device name in order, and the options given.
    pub fn engine_args(&self) -> Vec<String> {
        let mut args = vec![
            match self.verb {
                Verb::Backup => "backup",
                Verb::Restore => "restore",
            }
            .to_owned(),
            "--set".to_owned(),
            self.devices[0].clone(),
        ];
        for d in &self.devices {
            args.extend(["--device-name".to_owned(), d.clone()]);
        }
        for (flag, value) in [
            ("--max-transfer-size", self.max_transfer_size),
            ("--block-size", self.block_size),
            ("--buffer-count", self.buffer_count),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v.to_string()]);
            }
        }
        args
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
}

fn number(option: &str, token: &Token) -> Result<u32, StatementError> {
    match token {
        Token::Word(w) => w.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| StatementError::BadNumber(option.to_owned()))
}

fn tokenize(text: &str) -> Result<Vec<Token>, StatementError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')' {
            chars.next();
        } else if c == '=' {
            chars.next();
            tokens.push(Token::Equals);
        } else if c == '\'' || (c == 'N' && text_has_quote_next(&chars)) {
            if c == 'N' {
                chars.next();
            }
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err(StatementError::UnclosedQuote),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => s.push(ch),
                }
            }
            tokens.push(Token::Quoted(s));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ",;=()'".contains(ch) {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            tokens.push(Token::Word(w));
        }
    }
    Ok(tokens)
}

/// Whether the character after the next is a quote (`N'...'`, a Unicode literal).
fn text_has_quote_next(chars: &std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut ahead = chars.clone();
    ahead.next();
    ahead.peek() == Some(&'\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linux_sample_s_statements_are_read() {
        let b = Statement::parse(
            "BACKUP DATABASE db TO VIRTUAL_DEVICE='1b4e28ba-2fa1-11d2-883f-0016d3cca427' WITH FORMAT, MAXTRANSFERSIZE=1048576 ",
        )
        .unwrap();
        assert_eq!(b.verb, Verb::Backup);
        assert_eq!(b.database, "db");
        assert_eq!(b.devices, ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]);
        assert_eq!(
            b.engine_args(),
            [
                "backup",
                "--set",
                "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "--device-name",
                "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "--max-transfer-size",
                "1048576"
            ]
        );
        let r = Statement::parse(
            "restore log [x] from virtual_device = N'a''b' , VIRTUAL_DEVICE='c' with replace, blocksize=65536, buffercount=7",
        )
        .unwrap();
        assert_eq!(r.verb, Verb::Restore);
        assert_eq!(r.devices, ["a'b", "c"]);
        assert_eq!((r.block_size, r.buffer_count), (Some(65536), Some(7)));
        assert_eq!(r.max_transfer_size, None);
    }

    #[test]
    fn other_statements_are_refused() {
        assert_eq!(
            Statement::parse("SELECT 1"),
            Err(StatementError::NotBackupOrRestore)
        );
        assert_eq!(
            Statement::parse("BACKUP DATABASE d TO DISK='x'"),
            Err(StatementError::NoVirtualDevice)
        );
        assert_eq!(
            Statement::parse("BACKUP DATABASE d TO VIRTUAL_DEVICE='x"),
            Err(StatementError::UnclosedQuote)
        );
        assert_eq!(
            Statement::parse("BACKUP DATABASE d TO VIRTUAL_DEVICE='x' WITH MAXTRANSFERSIZE=big"),
            Err(StatementError::BadNumber("MAXTRANSFERSIZE".into()))
        );
    }
}
