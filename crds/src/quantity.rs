//! Kubernetes quantities (`1Gi`, `500M`, `1e9`) as byte counts, for mailbox quotas.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parse a quantity into whole bytes. Fractions round up; negative values and values that do not
/// fit 64 bits are errors.
pub fn parse_bytes(quantity: &Quantity) -> Result<u64, String> {
    let text = quantity.0.trim();
    let split_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split_at);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        "m" => 1e-3,
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("invalid quantity {text:?}"))?;
            10f64.powi(exp)
        }
        _ => {
            return Err(format!(
                "invalid quantity {text:?}: unknown suffix {suffix:?}"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid quantity {text:?}"))?;
    let bytes = (value * multiplier).ceil();
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("quantity {text:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<u64, String> {
        parse_bytes(&Quantity(s.into()))
    }

    #[test]
    fn suffixes() {
        assert_eq!(q("1Gi"), Ok(1 << 30));
        assert_eq!(q("500M"), Ok(500_000_000));
        assert_eq!(q("1e3"), Ok(1000));
        assert_eq!(q("1.5Ki"), Ok(1536));
        assert_eq!(q("12"), Ok(12));
        assert!(q("-1").is_err());
        assert!(q("1Zi").is_err());
        assert!(q("abc").is_err());
    }
}
