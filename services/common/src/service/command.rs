//! A service binary's command line: serve, or `replay-dead-letters [ID]...`.

/// What a service binary was asked to do on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the service.
    Serve,
    /// `replay-dead-letters [ID]...` (see [`crate::dead_letters`]).
    ReplayDeadLetters(Vec<String>),
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.into_iter();
        match args.next().as_deref() {
            None => Ok(Command::Serve),
            Some("replay-dead-letters") => Ok(Command::ReplayDeadLetters(args.collect())),
            Some(other) => anyhow::bail!(
                "unknown command {other:?}; usage: no arguments to run the service, or \
                 `replay-dead-letters [ID]...` (all dead letters when no ID is given)"
            ),
        }
    }

    /// This process's command line.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(std::env::args().skip(1))
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    fn parse(args: &[&str]) -> anyhow::Result<Command> {
        Command::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn no_arguments_serve_and_replay_takes_ids() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve);
        assert_eq!(
            parse(&["replay-dead-letters"]).unwrap(),
            Command::ReplayDeadLetters(vec![])
        );
        assert_eq!(
            parse(&["replay-dead-letters", "4", "2"]).unwrap(),
            Command::ReplayDeadLetters(vec!["4".into(), "2".into()])
        );
        let unknown = parse(&["--port", "80"]).unwrap_err().to_string();
        assert!(unknown.contains("usage"), "{unknown}");
    }
}
