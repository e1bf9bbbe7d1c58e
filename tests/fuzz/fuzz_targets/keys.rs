//! Arbitrary user input as key parts, patterns and paths: keys stay valid and inert,
//! patterns match only what they should, path templates never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_caching::{http::PathKey, key::KeyExtractor};
use tower_caching::key::{Key, KeyBuilder, Pattern};

fuzz_target!(|data: (String, String)| {
    let (part, other) = data;
    let keys = KeyBuilder::new().prefix("fuzz");
    let key = keys.entry(&part);
    assert!(Key::new(key.as_str()).is_ok());
    assert!(key.as_str().len() <= Key::MAX_LEN);
    if part != other {
        assert_ne!(key, keys.entry(&other));
        assert!(!Pattern::exact(key.as_str()).matches(keys.entry(&other).as_str()));
    }
    assert!(keys.entries().matches(key.as_str()));
    let _ = Key::new(part.clone());
    let _ = Pattern::glob(part.clone()).matches(&other);
    assert!(Pattern::prefix(&part).matches(&format!("{part}{other}")));
    let template = PathKey::new(&format!("/x/{{id}}/{part}"), "entry:{id}");
    if let Ok(request) = http::Request::get(format!("/x/{other}")).body(()) {
        let _ = template.key(&request);
    }
});
