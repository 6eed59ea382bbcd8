//! The json decoder on arbitrary bytes: it never panics, whatever it accepts obeys the
//! record limits, and it survives an encode/decode round trip unchanged.
#![no_main]

use ferry_config::config::RecordFormat;
use ferry_config::record::{self, MAX_FLOATS, MAX_TEXT_BYTES, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match json::decode(data) {
        Ok(decoded) => {
            assert!(decoded.values.len() <= MAX_FLOATS);
            assert!(decoded.text.len() <= MAX_TEXT_BYTES);
            assert!(decoded.values.iter().all(|v| v.is_finite()));
            assert_eq!(
                record::validate(RecordFormat::Json, data, None),
                Ok(decoded.timestamp_ms)
            );
            let bytes = json::encode(&decoded).expect("a decoded record must encode");
            assert_eq!(json::decode(&bytes).as_ref(), Ok(&decoded));
            // The same record in dsdata decodes to the same thing.
            let binary = record::encode(RecordFormat::Dsdata, &decoded).expect("dsdata encode");
            assert_eq!(
                record::decode(RecordFormat::Dsdata, &binary, None),
                Ok(decoded)
            );
        }
        Err(err) => {
            assert!(!err.reason().as_str().is_empty());
            let _ = err.to_string();
        }
    }
});
