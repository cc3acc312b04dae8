"""What nginx's configuration, the policy service and Orthanc's Python plugin share.

Standard library only, and only relative imports inside the package: Orthanc's Python
(Debian's, not the project's virtualenv) imports it from the project directory
(infra/orthanc/plugin.py), and the renderer writes parts of it into nginx.conf
(tests/test_access_package.py checks both).
"""
