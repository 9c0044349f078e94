//! Error messages for people: an error and its causes on one line.
//!
//! Many of our errors say what went wrong *and* why in their own message ("cannot read
//! team.yaml: No such file or directory") while also exposing the cause through
//! [`std::error::Error::source`], so joining the chain naively says the cause twice.
//! [`error_text`] joins it and skips a cause whose text the line already holds.

/// `error: cause: cause ...`, each cause once.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let part = next.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read team.yaml: {source}")]
    struct Says {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the config")]
    struct Wraps {
        #[source]
        source: Says,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            error_text(&Says { source: io() }),
            "cannot read team.yaml: no such file"
        );
        assert_eq!(
            error_text(&Wraps {
                source: Says { source: io() }
            }),
            "loading the config: cannot read team.yaml: no such file"
        );
    }
}
