//! Prints the Pipeline CRD as YAML; `crds/pipeline.yaml` is this output, committed.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match ferry_operator::crdgen::render() {
        Ok(yaml) => match std::io::stdout().write_all(yaml.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("crdgen: cannot write: {err}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("crdgen: cannot render the CRD: {err}");
            ExitCode::FAILURE
        }
    }
}
