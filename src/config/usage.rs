//! The text `-h` prints, and a bad flag prints after its message, in the manner of a Go
//! server's usage: a synopsis, then every flag of the table in `flags.rs` with its help.
//! Only the synopsis and the closing note are written here.

use super::flags::{Kind, FLAGS};

/// The usage text for the program named `program`.
pub(super) fn usage(program: &str) -> String {
    let mut text = format!(
        "Usage of {program}:
  {program} -b HOST:PORT -c HOST:PORT [-cert PATH -key PATH | -force-tls] [flags]

Flags are written as in Go: -flag value, -flag=value, --flag value, --flag=value;
a boolean flag is -flag alone, or -flag=true / -flag=false.

"
    );
    for flag in FLAGS {
        text.push_str("  -");
        text.push_str(&flag.names.join(", -"));
        let mut help = flag.help.to_string();
        if let Kind::Value {
            placeholder,
            default,
            ..
        } = &flag.kind
        {
            text.push(' ');
            text.push_str(placeholder);
            if let Some(default) = default.text() {
                help = help.replace("{default}", &default);
            }
        }
        text.push('\n');
        for line in help.lines() {
            text.push_str("        ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(
        "  -h, -help
        print this help and exit

Without -cert/-key and without -force-tls the server speaks plain HTTP, for running
behind a TLS reverse proxy.
",
    );
    text
}
