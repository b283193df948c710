//! The mcpgw control plane: owns the registry the filters enforce.
