//! Which entry point a request is for, from the script name the web server gives.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `update.php`: the device endpoint.
    Update,
    /// `admin/admin.php`: the admin page.
    Admin,
    /// `update-migrate.php`: redirect to a new server.
    Migrate,
    Unknown,
}

impl Route {
    pub fn of(script_name: &str) -> Route {
        let path = script_name.split('?').next().unwrap_or("");
        if path.ends_with("/admin/admin.php") || path == "admin/admin.php" {
            Route::Admin
        } else if path.ends_with("/update-migrate.php") || path == "update-migrate.php" {
            Route::Migrate
        } else if path.ends_with("/update.php") || path == "update.php" {
            Route::Update
        } else {
            Route::Unknown
        }
    }

    /// How deep below the root the script lies (`admin/admin.php` is one folder down).
    pub fn depth(self) -> usize {
        match self {
            Route::Admin => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/mtls/update/update.php"), Route::Update);
        assert_eq!(Route::of("/update/admin/admin.php"), Route::Admin);
        assert_eq!(Route::of("/update/update-migrate.php"), Route::Migrate);
        assert_eq!(Route::of("/update/other.php"), Route::Unknown);
        assert_eq!(Route::of("/update/xupdate.php"), Route::Unknown);
    }
}
