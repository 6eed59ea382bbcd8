//! The dsdata decoder on arbitrary bytes: it never panics, and whatever it accepts is
//! exactly what the encoder writes for the decoded record.
#![no_main]

use ferry_config::config::RecordFormat;
use ferry_config::record::{self, dsdata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let view = dsdata::DsdataView::parse(data);
    let decoded = dsdata::decode(data);
    let validated = record::validate(RecordFormat::Dsdata, data, None);
    match view {
        Ok(view) => {
            assert_eq!(
                data.len(),
                dsdata::encoded_len(view.float_count(), view.text().len())
            );
            assert!(view.values().all(f64::is_finite));
            let decoded = decoded.expect("view parsed but decode failed");
            assert_eq!(decoded, view.to_record());
            assert_eq!(validated, Ok(view.timestamp_ms()));
            let again = dsdata::encode(&decoded).expect("a decoded record must encode");
            assert_eq!(again.as_slice(), data, "encode(decode(x)) != x");
        }
        Err(err) => {
            assert_eq!(decoded.as_ref().err(), Some(&err));
            assert_eq!(validated.err(), Some(err.clone()));
            // Every refusal has a stable label and a one-line message.
            assert!(!err.reason().as_str().is_empty());
            assert!(!err.to_string().contains('\n'));
        }
    }
});
