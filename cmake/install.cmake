# cmake --install: libqpk (static and shared), its public headers, qpk.pc for pkg-config,
# a CMake package (find_package(qpk) -> qpk::qpk, the shared library, and qpk::qpk_static),
# and the tools.
include(CMakePackageConfigHelpers)
set(QPK_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/qpk)

install(TARGETS qpk qpk_shared EXPORT qpkTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/qpk DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(EXPORT qpkTargets NAMESPACE qpk:: DESTINATION ${QPK_CMAKE_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/qpkConfig.cmake.in
  ${PROJECT_BINARY_DIR}/qpkConfig.cmake INSTALL_DESTINATION ${QPK_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/qpkConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/qpkConfig.cmake ${PROJECT_BINARY_DIR}/qpkConfigVersion.cmake
  DESTINATION ${QPK_CMAKE_DIR})

# pkg-config: paths relative to the .pc file itself, so that the installed tree works
# wherever `cmake --install --prefix` puts it, and can be moved.
file(RELATIVE_PATH QPK_PC_UP "/root/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/root")
configure_file(${PROJECT_SOURCE_DIR}/cmake/qpk.pc.in ${PROJECT_BINARY_DIR}/qpk.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/qpk.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
