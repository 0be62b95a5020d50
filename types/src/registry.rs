//! The optional vehicle registry: `vehicle_id, tenant, tank_capacity_l, class`.

use compact_str::CompactString;
use serde::Deserialize;
use std::collections::HashMap;

/// One registry row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VehicleInfo {
    /// Vehicle.
    pub vehicle_id: CompactString,
    /// Owning tenant.
    #[serde(default)]
    pub tenant: Option<CompactString>,
    /// Tank capacity, litres (turns `fuel_level_pct` drops into litres).
    #[serde(default)]
    pub tank_capacity_l: Option<f64>,
    /// Vehicle class, free text.
    #[serde(default)]
    pub class: Option<String>,
}

/// A registry that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("vehicle registry line {line}: {message}")]
pub struct RegistryError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Vehicle id -> registry row.
#[derive(Debug, Clone, Default)]
pub struct VehicleRegistry {
    rows: HashMap<CompactString, VehicleInfo>,
}

impl VehicleRegistry {
    /// Parses a registry: NDJSON when the first non-blank character is `{`, else CSV with a
    /// header row.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let mut rows = HashMap::new();
        if text.trim_start().starts_with('{') {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row: VehicleInfo = serde_json::from_str(line).map_err(|e| RegistryError {
                    line: i + 1,
                    message: e.to_string(),
                })?;
                rows.insert(row.vehicle_id.clone(), row);
            }
        } else {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            for (i, rec) in reader.deserialize::<VehicleInfo>().enumerate() {
                let row = rec.map_err(|e| RegistryError {
                    line: i + 2,
                    message: e.to_string(),
                })?;
                rows.insert(row.vehicle_id.clone(), row);
            }
        }
        for row in rows.values() {
            if let Some(c) = row.tank_capacity_l {
                if !(c.is_finite() && c > 0.0) {
                    return Err(RegistryError {
                        line: 0,
                        message: format!("{}: tank_capacity_l must be > 0", row.vehicle_id),
                    });
                }
            }
        }
        Ok(VehicleRegistry { rows })
    }

    /// The row of a vehicle.
    pub fn get(&self, vehicle_id: &str) -> Option<&VehicleInfo> {
        self.rows.get(vehicle_id)
    }

    /// Number of vehicles.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds or replaces a row.
    pub fn insert(&mut self, row: VehicleInfo) {
        self.rows.insert(row.vehicle_id.clone(), row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_ndjson_registries_parse() {
        let csv = "vehicle_id,tenant,tank_capacity_l,class\nV1, acme ,60,van\nV2,,,\n";
        let r = VehicleRegistry::parse(csv).unwrap();
        assert_eq!(r.get("V1").unwrap().tank_capacity_l, Some(60.0));
        assert_eq!(r.get("V1").unwrap().tenant.as_deref(), Some("acme"));
        assert_eq!(r.get("V2").unwrap().tenant, None);
        let nd = "{\"vehicle_id\":\"V3\",\"tank_capacity_l\":80}\n";
        assert_eq!(
            VehicleRegistry::parse(nd)
                .unwrap()
                .get("V3")
                .unwrap()
                .tank_capacity_l,
            Some(80.0)
        );
        assert!(VehicleRegistry::parse("vehicle_id,tank_capacity_l\nV1,-3\n").is_err());
    }
}
