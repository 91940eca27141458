//! Pyroscope's renaming of generated JVM classes and temporary native libraries (jfr-parser's
//! symbol processor): names that differ per process or per run (lambda classes, reflection
//! accessors, a JNI library unpacked under a random name) become one stable name, so that
//! profiles of different runs merge. Applied to every symbol, in this order.
use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// (a literal every match contains, the pattern, its replacement).
type Rule = (&'static str, Regex, &'static str);

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |needle, pattern: &str, with| (needle, Regex::new(pattern).expect("a valid pattern"), with);
    vec![
        rule("GeneratedMethodAccessor", r"^(jdk/internal/reflect/GeneratedMethodAccessor)([0-9]+)$", "${1}_"),
        rule("$$Lambda", r"^(.+\$\$Lambda)(\$?[0-9]*[./](0x)?[0-9a-f]+|[0-9]+)$", "${1}_"),
        rule(
            "libzstd-jni-",
            r"^(\.?/tmp/)?(libzstd-jni-[0-9]+\.[0-9]+\.[0-9]+-)([0-9]+)(\.so)( \(deleted\))?$",
            "libzstd-jni-_.so",
        ),
        rule(
            "amazonCorrettoCryptoProvider",
            r"^(\.?/tmp/)?(lib)?(amazonCorrettoCryptoProvider)(NativeLibraries\.)?([0-9a-f]{16})(/libcrypto|/libamazonCorrettoCryptoProvider)?(\.so)( \(deleted\))?$",
            "libamazonCorrettoCryptoProvider_.so",
        ),
        rule(
            "libasyncProfiler-",
            r"^(\.?/tmp/)?(libasyncProfiler)-(linux-arm64|linux-musl-x64|linux-x64|macos)-(17b9a1d8156277a98ccc871afa9a8f69215f92)(\.so)( \(deleted\))?$",
            "libasyncProfiler-_.so",
        ),
        rule("$$EnhancerBySpringCGLIB$$", r"^(.+\$\$EnhancerBySpringCGLIB\$\$)(.*)$", "${1}_"),
    ]
});

/// `symbol` with every rule applied; borrowed when none matches (almost always: each rule
/// runs only on names holding its literal).
pub fn stable_name(symbol: &str) -> Cow<'_, str> {
    let mut s = Cow::Borrowed(symbol);
    for (needle, re, with) in RULES.iter() {
        if s.contains(needle) {
            if let Cow::Owned(o) = re.replace(&s, *with) {
                s = Cow::Owned(o);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::stable_name;

    #[test]
    fn generated_names_merge() {
        for (from, to) in [
            ("jdk/internal/reflect/GeneratedMethodAccessor31", "jdk/internal/reflect/GeneratedMethodAccessor_"),
            (
                "org/example/rideshare/OrderService$$Lambda$669.0x0000000800fd7318",
                "org/example/rideshare/OrderService$$Lambda_",
            ),
            ("Fib$$Lambda.0x00007ffa600c4da0", "Fib$$Lambda_"),
            ("Fib$$Lambda12", "Fib$$Lambda_"),
            ("Fib$$Lambda$12", "Fib$$Lambda$12"),
            ("libzstd-jni-1.5.1-16931311898282279136.so", "libzstd-jni-_.so"),
            ("./tmp/libamazonCorrettoCryptoProvider109b39cf33c563eb.so", "libamazonCorrettoCryptoProvider_.so"),
            (
                "./tmp/amazonCorrettoCryptoProviderNativeLibraries.7382c2f79097f415/libcrypto.so (deleted)",
                "libamazonCorrettoCryptoProvider_.so",
            ),
            ("libasyncProfiler-linux-arm64-17b9a1d8156277a98ccc871afa9a8f69215f92.so", "libasyncProfiler-_.so"),
            ("com/x/Foo$$EnhancerBySpringCGLIB$$1a2b", "com/x/Foo$$EnhancerBySpringCGLIB$$_"),
            ("java/lang/Thread", "java/lang/Thread"),
            ("Fib$$Lambda", "Fib$$Lambda"),
        ] {
            assert_eq!(stable_name(from), to, "{from}");
        }
    }
}
